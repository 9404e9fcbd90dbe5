//! The console's stylesheet, script and icon, compiled into the binary (nothing is fetched from
//! anywhere at run time). Their paths carry the package version, so a browser may cache them
//! for a year and still gets the new ones after an upgrade.

use poem::http::header;
use poem::{Response, handler};

/// Where the stylesheet is served.
pub const STYLESHEET_PATH: &str = concat!("/console/", env!("CARGO_PKG_VERSION"), "/console.css");
/// Where the script is served.
pub const SCRIPT_PATH: &str = concat!("/console/", env!("CARGO_PKG_VERSION"), "/console.js");
/// Where the icon is served.
pub const ICON_PATH: &str = concat!("/console/", env!("CARGO_PKG_VERSION"), "/icon.svg");

const STYLESHEET: &str = include_str!("assets/console.css");
const SCRIPT: &str = include_str!("assets/console.js");
const ICON: &str = include_str!("assets/icon.svg");

fn asset(content_type: &str, body: &'static str) -> Response {
    Response::builder()
        .content_type(content_type)
        .header(header::CACHE_CONTROL, "public, max-age=31536000, immutable")
        .header("x-content-type-options", "nosniff")
        .body(body)
}

/// `GET` the stylesheet.
#[handler]
pub fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", STYLESHEET)
}

/// `GET` the script (copy buttons, live refresh).
#[handler]
pub fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET` the icon.
#[handler]
pub fn icon() -> Response {
    asset("image/svg+xml", ICON)
}
