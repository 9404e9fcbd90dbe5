//! A real headless Chromium for the console's browser tests, driven over WebDriver
//! (chromedriver) with fantoccini.
//!
//! Each test starts its own chromedriver on a free loopback port and its own browser profile.
//! Where `chromium` or `chromedriver` is not installed, [`Browser::start`] prints a NOTICE and
//! returns None (the test passes without running), unless `HOOKLINE_REQUIRE_SERVICES=1` (CI)
//! makes that a failure. Screenshots of each step go to `$HOOKLINE_ARTIFACTS_DIR/<test>/` or,
//! by default, `<target dir>/artifacts/console/<test>/`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};

use crate::wait_until;

/// How long a page gets to show an element (a loaded machine included).
const FIND_TIMEOUT: Duration = Duration::from_secs(20);

/// A headless Chromium session with its chromedriver.
pub struct Browser {
    /// The WebDriver client.
    pub client: Client,
    _driver: Driver,
    _profile: tempfile::TempDir,
    artifacts: PathBuf,
    step: usize,
}

/// Where a program is, if it is on `PATH` (or at an absolute path).
fn find_program(names: &[&str]) -> Option<PathBuf> {
    for name in names {
        let candidate = Path::new(name);
        if candidate.is_absolute() && candidate.exists() {
            return Some(candidate.to_owned());
        }
        if let Some(paths) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&paths) {
                let path = dir.join(name);
                if path.is_file() {
                    return Some(path);
                }
            }
        }
    }
    None
}

fn skip_or_fail(problem: &str) {
    if std::env::var("HOOKLINE_REQUIRE_SERVICES").is_ok_and(|value| value == "1") {
        panic!("HOOKLINE_REQUIRE_SERVICES=1 but {problem}");
    }
    let _ = writeln!(
        std::io::stderr(),
        "\nNOTICE: the browser suite is SKIPPED in this run: {problem}.\n        \
         Install Debian's chromium and chromium-driver (apt-get install chromium \
         chromium-driver) or set HOOKLINE_REQUIRE_SERVICES=1 to make this a failure.\n"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// Where screenshots of `test` go.
fn artifacts_dir(test: &str) -> PathBuf {
    let base = match std::env::var_os("HOOKLINE_ARTIFACTS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            // …/target/debug/deps/it-<hash> → …/target/artifacts/console
            let exe = std::env::current_exe().expect("the test binary's path");
            exe.ancestors()
                .nth(3)
                .map(|target| target.join("artifacts").join("console"))
                .unwrap_or_else(|| std::env::temp_dir().join("hookline-artifacts"))
        }
    };
    base.join(test)
}

impl Browser {
    /// Starts chromedriver and a headless Chromium for `test` (names the screenshot folder);
    /// None when they are not installed (after a notice).
    pub async fn start(test: &str) -> Option<Self> {
        crate::init_test_process();
        let Some(chromium) = find_program(&["chromium", "chromium-browser", "google-chrome"])
        else {
            skip_or_fail("chromium is not installed");
            return None;
        };
        let Some(chromedriver) = find_program(&["chromedriver", "/usr/lib/chromium/chromedriver"])
        else {
            skip_or_fail("chromedriver (Debian's chromium-driver) is not installed");
            return None;
        };
        let http = reqwest::Client::new();
        let port = free_port();
        let driver = Driver(
            Command::new(&chromedriver)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start chromedriver"),
        );
        let driver_url = format!("http://127.0.0.1:{port}");
        wait_until(Duration::from_secs(20), "chromedriver is ready", || async {
            let status: serde_json::Value = http
                .get(format!("{driver_url}/status"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            status["value"]["ready"].as_bool().filter(|ready| *ready)
        })
        .await;

        let profile = tempfile::tempdir().expect("a browser profile directory");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            serde_json::json!({
                "binary": chromium,
                "args": [
                    "--headless=new",
                    // Tests run as root in containers, where Chromium's sandbox cannot start.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,900",
                    "--lang=en-US",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&driver_url)
            .await
            .expect("a WebDriver session with headless Chromium");
        let artifacts = artifacts_dir(test);
        let _ = std::fs::remove_dir_all(&artifacts);
        std::fs::create_dir_all(&artifacts).expect("the artifacts directory");
        Some(Self {
            client,
            _driver: driver,
            _profile: profile,
            artifacts,
            step: 0,
        })
    }

    /// Saves a screenshot of the page as `<NN>-<name>.png`.
    pub async fn screenshot(&mut self, name: &str) {
        self.step += 1;
        let png = self.client.screenshot().await.expect("a screenshot");
        let path = self.artifacts.join(format!("{:02}-{name}.png", self.step));
        std::fs::write(&path, png).expect("write the screenshot");
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("navigate");
    }

    /// The current URL.
    pub async fn url(&self) -> reqwest::Url {
        let url = self.client.current_url().await.expect("the current URL");
        reqwest::Url::parse(url.as_str()).expect("a URL")
    }

    /// Waits until the browser is at `path` (a click's navigation may still be under way).
    pub async fn wait_for_path(&self, path: &str) {
        wait_until(
            FIND_TIMEOUT,
            &format!("the browser is at {path}"),
            || async { (self.url().await.path() == path).then_some(()) },
        )
        .await;
    }

    /// The visible text of the page (read again if the page changed while it was read).
    pub async fn text(&self) -> String {
        wait_until(FIND_TIMEOUT, "the page's text can be read", || async {
            let body = self.client.find(Locator::Css("body")).await.ok()?;
            body.text().await.ok()
        })
        .await
    }

    /// The element `locator`, once the page has it (at most [`FIND_TIMEOUT`]).
    async fn wait_for(&self, locator: Locator<'_>, what: &str) -> Element {
        self.client
            .wait()
            .at_most(FIND_TIMEOUT)
            .for_element(locator)
            .await
            .unwrap_or_else(|error| panic!("no {what}: {error}"))
    }

    /// The element `css`.
    pub async fn find(&self, css: &str) -> Element {
        self.wait_for(Locator::Css(css), &format!("element {css}"))
            .await
    }

    /// The form control labelled `label` (through `<label for>`), as a person finds it.
    pub async fn field(&self, label: &str) -> Element {
        let xpath = format!("//label[normalize-space()='{label}']");
        let label_element = self
            .wait_for(Locator::XPath(&xpath), &format!("field labelled {label:?}"))
            .await;
        let id = label_element
            .attr("for")
            .await
            .expect("the label's for")
            .unwrap_or_else(|| panic!("the label {label:?} names no control"));
        self.find(&format!("#{id}")).await
    }

    /// Types `text` into the field labelled `label` (after clearing it).
    pub async fn fill(&self, label: &str, text: &str) {
        let field = self.field(label).await;
        field.clear().await.expect("clear the field");
        field.send_keys(text).await.expect("type into the field");
    }

    /// The button whose text is `text` (the first one, in document order).
    pub async fn button(&self, text: &str) -> Element {
        let xpath = format!("//button[normalize-space()='{text}']");
        self.wait_for(Locator::XPath(&xpath), &format!("button {text:?}"))
            .await
    }

    /// Clicks the button whose text is `text`, and waits (at most [`FIND_TIMEOUT`]) for the page
    /// it was on to be replaced: every button of the console submits a form, and the page read
    /// right after a click could otherwise still be the one the button was on.
    pub async fn click_button(&self, text: &str) {
        let button = self.button(text).await;
        button.click().await.expect("click");
        let deadline = std::time::Instant::now() + FIND_TIMEOUT;
        // The button is gone (a stale element) once the form's answer is the page.
        while button.is_enabled().await.is_ok() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Reloads the page until its text contains `expected` (at most `timeout`).
    pub async fn wait_for_text(&self, timeout: Duration, expected: &str) {
        wait_until(timeout, &format!("the page shows {expected:?}"), || async {
            if self.text().await.contains(expected) {
                Some(())
            } else {
                self.client.refresh().await.expect("reload");
                None
            }
        })
        .await;
    }

    /// Ends the browser session (Chromium quits) and chromedriver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

/// The chromedriver process, killed when dropped (also when a test panics).
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
