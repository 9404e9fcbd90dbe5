//! The console over plain HTTP (DESIGN §5 "Console", §10): pages refused without a session,
//! forms refused without their CSRF token, the session cookie's protections, sign-out, the
//! admin's company creation, and subscriptions managed through the console's forms. The same
//! pages in a real browser: `console_browser.rs`.

use api::Role;
use entity::console_session;
use sea_orm::EntityTrait;
use tests::{Backend, TEST_ADMIN_TOKEN, TestApp};

use crate::helpers::start;
use crate::on_both_backends;

on_both_backends!(
    console_pages_without_a_session_lead_to_the_sign_in_page,
    signing_in_sets_a_protected_session_cookie_and_signing_out_ends_the_session,
    forms_without_their_csrf_token_are_refused_and_change_nothing,
    the_admin_creates_a_company_and_sees_its_api_key_once,
    subscriptions_are_created_edited_disabled_and_rotated_through_the_console,
);

/// A browser without a cookie jar: cookies are kept by hand, as the server set them.
pub struct ConsoleClient<'a> {
    app: &'a TestApp,
    cookies: Vec<(String, String)>,
}

impl<'a> ConsoleClient<'a> {
    pub fn new(app: &'a TestApp) -> Self {
        Self {
            app,
            cookies: Vec::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep_cookies(&mut self, response: &reqwest::Response) {
        for header in response.headers().get_all("set-cookie") {
            let text = header.to_str().expect("a cookie");
            let pair = text.split(';').next().expect("name=value");
            let (name, value) = pair.split_once('=').expect("name=value");
            self.cookies.retain(|(kept, _)| kept != name);
            if !value.is_empty() {
                self.cookies.push((name.to_owned(), value.to_owned()));
            }
        }
    }

    pub async fn get(&mut self, path: &str) -> reqwest::Response {
        let response = self
            .app
            .client
            .get(self.app.url(path))
            .header("cookie", self.cookie_header())
            .send()
            .await
            .expect("request");
        self.keep_cookies(&response);
        response
    }

    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        let body: String = form
            .iter()
            .map(|(name, value)| format!("{}={}", encode(name), encode(value)))
            .collect::<Vec<_>>()
            .join("&");
        let response = self
            .app
            .client
            .post(self.app.url(path))
            .header("cookie", self.cookie_header())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("request");
        self.keep_cookies(&response);
        response
    }

    /// The page at `path` (200) and its CSRF token.
    pub async fn page(&mut self, path: &str) -> (String, String) {
        let response = self.get(path).await;
        assert_eq!(response.status(), 200, "GET {path}");
        let html = response.text().await.expect("html");
        let token = csrf_token(&html);
        (html, token)
    }

    /// Signs in with `api_key`; returns the session's CSRF token.
    pub async fn sign_in(&mut self, api_key: &str) -> String {
        let (_, token) = self.page("/").await;
        let response = self
            .post("/sign-in", &[("api_key", api_key), ("csrf_token", &token)])
            .await;
        assert_eq!(response.status(), 303, "sign in");
        assert_eq!(location(&response), "/connections");
        self.page("/connections").await.1
    }
}

fn encode(text: &str) -> String {
    let mut url = reqwest::Url::parse("http://x/").expect("url");
    url.query_pairs_mut().append_pair("v", text);
    url.query().expect("query")[2..].to_owned()
}

/// The value of the first `csrf_token` field of a page.
pub fn csrf_token(html: &str) -> String {
    let marker = r#"name="csrf_token" value=""#;
    let start = html.find(marker).expect("a form with a CSRF token") + marker.len();
    html[start..].split('"').next().expect("a value").to_owned()
}

pub fn location(response: &reqwest::Response) -> &str {
    response
        .headers()
        .get("location")
        .and_then(|value| value.to_str().ok())
        .expect("a Location header")
}

async fn console_pages_without_a_session_lead_to_the_sign_in_page(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let mut browser = ConsoleClient::new(&app);
    for path in [
        "/connections",
        "/subscriptions",
        "/events",
        "/events/0193a3a4-0000-7000-8000-000000000000",
        "/dead-letters",
    ] {
        let response = browser.get(path).await;
        assert_eq!(response.status(), 303, "{path}");
        assert_eq!(location(&response), "/", "{path}");
    }
    let response = browser.get("/").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/html; charset=utf-8"
    );
    let html = response.text().await.expect("html");
    assert!(
        html.contains(r#"<label for="api_key">API key</label>"#),
        "{html}"
    );
    assert!(html.contains(">Sign in</button>"), "{html}");
    // A form posted without a session changes nothing and leads to the sign-in page too.
    let response = browser
        .post(
            "/connections/register",
            &[("external_id", "x.atlassian.net")],
        )
        .await;
    assert_eq!(response.status(), 303);
    assert_eq!(location(&response), "/");
    // The API and its documents are still where they were.
    assert_eq!(browser.get("/openapi.json").await.status(), 200);
    assert_eq!(browser.get("/docs").await.status(), 200);
    assert_eq!(browser.get("/healthz").await.status(), 200);
    app.stop().await;
    env.cleanup().await;
}

async fn signing_in_sets_a_protected_session_cookie_and_signing_out_ends_the_session(
    backend: Backend,
) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let (_, api_key) = app.create_company("Northwind").await;
    let mut browser = ConsoleClient::new(&app);

    // A wrong key: refused with a message, no session.
    let (_, token) = browser.page("/").await;
    let response = browser
        .post(
            "/sign-in",
            &[("api_key", "hk_wrong"), ("csrf_token", &token)],
        )
        .await;
    assert_eq!(response.status(), 401);
    assert!(response.text().await.expect("html").contains("not valid"));
    assert!(
        console_session::Entity::find()
            .all(&app.db)
            .await
            .expect("query")
            .is_empty()
    );

    let (_, token) = browser.page("/").await;
    let response = browser
        .post("/sign-in", &[("api_key", &api_key), ("csrf_token", &token)])
        .await;
    assert_eq!(response.status(), 303);
    let session_cookie = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|value| value.to_str().expect("cookie").to_owned())
        .find(|cookie| cookie.starts_with("hookline_session="))
        .expect("a session cookie");
    assert!(session_cookie.contains("HttpOnly"), "{session_cookie}");
    assert!(session_cookie.contains("SameSite=Lax"), "{session_cookie}");
    assert!(
        !session_cookie.contains("Secure"),
        "plain http: {session_cookie}"
    );
    assert!(
        !session_cookie.contains(&api_key),
        "the key is not in the cookie"
    );
    // The database keeps a hash of the cookie's token, never the token or the key.
    let sessions = console_session::Entity::find()
        .all(&app.db)
        .await
        .expect("query");
    assert_eq!(sessions.len(), 1);
    let cookie_token = session_cookie
        .split(';')
        .next()
        .and_then(|pair| pair.split_once('='))
        .map(|(_, value)| value.to_owned())
        .expect("a token");
    assert_ne!(sessions[0].token_hash, cookie_token);
    assert_ne!(sessions[0].token_hash, api_key);

    let (html, csrf) = browser.page("/connections").await;
    assert!(html.contains(">Connect Jira</button>"), "{html}");
    assert!(html.contains("Northwind"));
    let stolen = browser.cookies.clone();

    let response = browser.post("/sign-out", &[("csrf_token", &csrf)]).await;
    assert_eq!(response.status(), 303);
    assert_eq!(location(&response), "/");
    assert!(
        console_session::Entity::find()
            .all(&app.db)
            .await
            .expect("query")
            .is_empty(),
        "signing out deletes the session"
    );
    // A copy of the old cookie no longer signs anybody in.
    browser.cookies = stolen;
    let response = browser.get("/connections").await;
    assert_eq!(response.status(), 303);
    assert_eq!(location(&response), "/");
    app.stop().await;

    // Behind https the cookie is Secure.
    let app = env
        .spawn_with(Role::Serve, |settings| {
            settings.public_url = Some("https://hooks.example.com".to_owned());
        })
        .await;
    let mut browser = ConsoleClient::new(&app);
    let (_, token) = browser.page("/").await;
    let response = browser
        .post("/sign-in", &[("api_key", &api_key), ("csrf_token", &token)])
        .await;
    assert_eq!(response.status(), 303);
    let cookies: Vec<&str> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|value| value.to_str().expect("cookie"))
        .collect();
    assert!(
        cookies
            .iter()
            .any(|cookie| cookie.starts_with("hookline_session=") && cookie.contains("; Secure")),
        "{cookies:?}"
    );
    app.stop().await;
    env.cleanup().await;
}

async fn forms_without_their_csrf_token_are_refused_and_change_nothing(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let (_, api_key) = app.create_company("Northwind").await;
    let mut browser = ConsoleClient::new(&app);

    // The sign-in form needs the token of its cookie.
    browser.page("/").await;
    let response = browser
        .post(
            "/sign-in",
            &[("api_key", &api_key), ("csrf_token", "forged")],
        )
        .await;
    assert_eq!(response.status(), 403);

    let csrf = browser.sign_in(&api_key).await;
    let form = [
        ("external_id", "northwind.atlassian.net"),
        ("external_name", "Northwind"),
    ];
    let response = browser.post("/connections/register", &form).await;
    assert_eq!(response.status(), 403, "no token");
    let response = browser
        .post(
            "/connections/register",
            &[form[0], form[1], ("csrf_token", "not-the-token")],
        )
        .await;
    assert_eq!(response.status(), 403, "a wrong token");
    assert!(
        response
            .text()
            .await
            .expect("html")
            .contains("security token")
    );
    let listed: serde_json::Value = app
        .client
        .get(app.url("/api/v1/connections"))
        .bearer_auth(&api_key)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(listed["items"].as_array().expect("items").len(), 0);
    let response = browser.post("/sign-out", &[]).await;
    assert_eq!(response.status(), 403, "signing out needs the token too");

    // With its token the same form works, and the secret page is not cached.
    let response = browser
        .post(
            "/connections/register",
            &[form[0], form[1], ("csrf_token", &csrf)],
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let html = response.text().await.expect("html");
    assert!(html.contains("/webhook/jira/"), "{html}");
    assert!(html.contains("Settings → System → WebHooks"));
    app.stop().await;
    env.cleanup().await;
}

async fn the_admin_creates_a_company_and_sees_its_api_key_once(backend: Backend) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let mut browser = ConsoleClient::new(&app);
    let (html, token) = browser.page("/admin").await;
    assert!(html.contains("Admin token"));
    let response = browser
        .post(
            "/admin/sign-in",
            &[("admin_token", "wrong"), ("csrf_token", &token)],
        )
        .await;
    assert_eq!(response.status(), 401);
    let (_, token) = browser.page("/admin").await;
    let response = browser
        .post(
            "/admin/sign-in",
            &[("admin_token", TEST_ADMIN_TOKEN), ("csrf_token", &token)],
        )
        .await;
    assert_eq!(response.status(), 303);
    let (html, csrf) = browser.page("/admin").await;
    assert!(html.contains("Create a company"));
    // The admin's session is not a company's.
    assert_eq!(browser.get("/connections").await.status(), 303);

    let response = browser
        .post(
            "/admin/companies",
            &[("name", "Contoso"), ("csrf_token", &csrf)],
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let html = response.text().await.expect("html");
    let start = html.find(">hk_").expect("the API key on the page") + 1;
    let api_key: String = html[start..].chars().take_while(|c| *c != '<').collect();
    let response = app
        .client
        .get(app.url("/api/v1/connections"))
        .bearer_auth(&api_key)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200, "the shown key works");
    let (html, _) = browser.page("/admin").await;
    assert!(!html.contains(&api_key), "the key is shown only once");

    let response = browser
        .post("/admin/companies", &[("name", "  "), ("csrf_token", &csrf)])
        .await;
    assert_eq!(response.status(), 422);
    app.stop().await;
    env.cleanup().await;
}

async fn subscriptions_are_created_edited_disabled_and_rotated_through_the_console(
    backend: Backend,
) {
    let Some((env, app)) = start(backend, Role::Serve).await else {
        return;
    };
    let (_, api_key) = app.create_company("Northwind").await;
    let mut browser = ConsoleClient::new(&app);
    let csrf = browser.sign_in(&api_key).await;

    let refused = browser
        .post(
            "/subscriptions",
            &[
                ("url", "not a url"),
                ("event_types", "jira:issue_*"),
                ("csrf_token", &csrf),
            ],
        )
        .await;
    assert_eq!(refused.status(), 422);
    assert!(refused.text().await.expect("html").contains("Not saved"));

    let response = browser
        .post(
            "/subscriptions",
            &[
                ("url", "http://127.0.0.1:9/hook"),
                ("event_types", "jira:issue_*, comment_created"),
                ("project_keys", "eng ops"),
                ("connection", ""),
                ("description", "Ops board"),
                ("csrf_token", &csrf),
            ],
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let html = response.text().await.expect("html");
    assert!(html.contains("whsec_"), "the secret is shown once");
    let api = |path: String| {
        let request = app.client.get(app.url(&path)).bearer_auth(&api_key);
        async move {
            request
                .send()
                .await
                .expect("request")
                .json::<serde_json::Value>()
                .await
                .expect("json")
        }
    };
    let listed = api("/api/v1/subscriptions".to_owned()).await;
    let subscription = &listed["items"][0];
    let id = subscription["id"].as_str().expect("id").to_owned();
    assert_eq!(
        subscription["eventTypes"],
        serde_json::json!(["jira:issue_*", "comment_created"])
    );
    assert_eq!(
        subscription["filters"],
        serde_json::json!({"projectKeys": ["ENG", "OPS"]})
    );
    assert_eq!(subscription["description"], "Ops board");

    let (page, _) = browser.page(&format!("/subscriptions/{id}")).await;
    assert!(page.contains("Recent deliveries"));
    let response = browser
        .post(
            &format!("/subscriptions/{id}"),
            &[
                ("url", "http://127.0.0.1:9/other"),
                ("event_types", "jira:issue_updated"),
                ("project_keys", ""),
                ("description", ""),
                ("csrf_token", &csrf),
            ],
        )
        .await;
    assert_eq!(response.status(), 303);
    let edited = api(format!("/api/v1/subscriptions/{id}")).await;
    assert_eq!(edited["url"], "http://127.0.0.1:9/other");
    assert_eq!(
        edited["eventTypes"],
        serde_json::json!(["jira:issue_updated"])
    );
    assert!(edited["filters"].is_null(), "{edited}");

    let response = browser
        .post(
            &format!("/subscriptions/{id}/disable"),
            &[("csrf_token", &csrf)],
        )
        .await;
    assert_eq!(response.status(), 303);
    assert_eq!(
        api(format!("/api/v1/subscriptions/{id}")).await["enabled"],
        false
    );
    browser
        .post(
            &format!("/subscriptions/{id}/enable"),
            &[("csrf_token", &csrf)],
        )
        .await;
    assert_eq!(
        api(format!("/api/v1/subscriptions/{id}")).await["enabled"],
        true
    );

    let first = browser
        .post(
            &format!("/subscriptions/{id}/rotate-secret"),
            &[("csrf_token", &csrf)],
        )
        .await
        .text()
        .await
        .expect("html");
    let second = browser
        .post(
            &format!("/subscriptions/{id}/rotate-secret"),
            &[("csrf_token", &csrf)],
        )
        .await
        .text()
        .await
        .expect("html");
    let secret = |html: &str| {
        let start = html.find(">whsec_").expect("a secret") + 1;
        html[start..]
            .chars()
            .take_while(|c| *c != '<')
            .collect::<String>()
    };
    assert_ne!(
        secret(&first),
        secret(&second),
        "each rotation is a new secret"
    );

    let response = browser
        .post(
            &format!("/subscriptions/{id}/delete"),
            &[("csrf_token", &csrf)],
        )
        .await;
    assert_eq!(response.status(), 303);
    let listed = api("/api/v1/subscriptions".to_owned()).await;
    assert!(listed["items"].as_array().expect("items").is_empty());
    app.stop().await;
    env.cleanup().await;
}
