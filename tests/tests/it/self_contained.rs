//! The repository stands on its own: no file of it reads or links anything beside the clone
//! (the Jira fixtures are copied into `fixtures/jira`, the architecture is `docs/ARCHITECTURE.md`).

use std::path::Path;

use crate::embedded::repository_root;

#[test]
fn no_file_of_the_repository_refers_outside_it() {
    let root = repository_root();
    let output = std::process::Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(&root)
        .output();
    // Outside a git checkout (a source tarball) every file below the root counts.
    let files: Vec<String> = match output {
        Ok(output) if output.status.success() => String::from_utf8_lossy(&output.stdout)
            .split('\0')
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => walk(&root, &root),
    };
    assert!(
        files.len() > 50,
        "the file list is the repository's: {}",
        files.len()
    );
    let outside = ["../", "shared/"].concat();
    let mut offenders = Vec::new();
    for name in &files {
        let Ok(text) = std::fs::read_to_string(root.join(name)) else {
            continue;
        };
        if text.contains(&outside) {
            offenders.push(name.clone());
        }
    }
    assert!(
        offenders.is_empty(),
        "these files refer to {outside}: {offenders:?}"
    );
    assert!(root.join("fixtures/jira/README.md").exists());
    assert!(root.join("docs/ARCHITECTURE.md").exists());
}

fn walk(root: &Path, dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "target" || name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            files.extend(walk(root, &path));
        } else if let Ok(relative) = path.strip_prefix(root) {
            files.push(relative.to_string_lossy().into_owned());
        }
    }
    files
}
