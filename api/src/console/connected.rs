//! The page shown right after sites are connected (OAuth callback, or a connection registered
//! by hand): each site's webhook URL and secret (the secret only here), and how to register the
//! webhook in Jira.

use maud::{Markup, html};
use uuid::Uuid;

use crate::console::layout::{self, Section, Viewer};

/// A site just connected, with the secret that is shown only now.
pub struct ConnectedSite<'a> {
    /// The connection's id.
    pub id: Uuid,
    /// The site's display name.
    pub name: &'a str,
    /// The site's host, e.g. `northwind.atlassian.net`.
    pub external_id: &'a str,
    /// Where Jira posts the site's webhooks.
    pub webhook_url: &'a str,
    /// The secret Jira signs webhooks with.
    pub webhook_secret: &'a str,
}

/// The whole page. Serve it with `Cache-Control: no-store` ([`layout::html_response`]): it
/// shows secrets.
pub fn connected_page(heading: &str, sites: &[ConnectedSite<'_>], viewer: Viewer<'_>) -> Markup {
    let body = html! {
        div class="page-header" {
            div {
                h1 { (heading) }
                p {
                    @if sites.len() == 1 { "1 site is connected." }
                    @else { (sites.len()) " sites are connected." }
                    " Register the webhook in Jira with the URL and secret below."
                }
            }
            div class="actions" {
                a class="button" href="/connections" { "Go to connections" }
            }
        }
        p class="secret-warning" role="note" {
            strong { "The secrets are shown only on this page. " }
            "Copy each one into Jira now; hookline keeps it encrypted and will not show it again."
        }
        @for (index, site) in sites.iter().enumerate() {
            (site_card(index, site))
        }
    };
    layout::page(heading, Section::Connections, viewer, body)
}

fn site_card(index: usize, site: &ConnectedSite<'_>) -> Markup {
    let url_id = format!("webhook-url-{index}");
    let secret_id = format!("webhook-secret-{index}");
    let webhooks_page = format!("https://{}/plugins/servlet/webhooks", site.external_id);
    html! {
        section class="card site" aria-labelledby={ "site-" (index) } data-connection-id=(site.id) {
            div class="card-header" {
                div {
                    h2 id={ "site-" (index) } { (site.name) }
                    p class="mono" { (site.external_id) }
                }
                (layout::status_badge("active"))
            }
            div class="grid" {
                div {
                    (layout::copy_field(&url_id, "Webhook URL", site.webhook_url))
                    (layout::copy_field(&secret_id, "Secret", site.webhook_secret))
                    dl class="facts" {
                        dt { "Connection id" } dd { code { (site.id) } }
                    }
                }
                div {
                    h3 { "Register the webhook in Jira" }
                    (jira_steps(&webhooks_page, site.external_id))
                }
            }
        }
    }
}

/// How a Jira admin registers a webhook for this site.
pub fn jira_steps(webhooks_page: &str, external_id: &str) -> Markup {
    html! {
        ol class="steps" {
            li {
                "In " a href=(webhooks_page) rel="noopener noreferrer" target="_blank" { (external_id) }
                ", open " strong { "Settings → System → WebHooks" }
                " and choose " strong { "Create a WebHook" } "."
            }
            li { "Name it (e.g. " em { "hookline" } ") and paste the " strong { "Webhook URL" } " as its URL." }
            li { "Paste the " strong { "Secret" } "; Jira signs every delivery with it and hookline checks the signature." }
            li {
                "Events: under " em { "Issue" } " tick " strong { "created" } ", " strong { "updated" }
                " and " strong { "deleted" } "; under " em { "Comment" } " tick " strong { "created" }
                ", " strong { "updated" } " and " strong { "deleted" }
                ". Worklog and issue link events are optional."
            }
            li {
                "Optionally limit the issues with a JQL filter, e.g. " code { "project = MYPROJ" } "."
            }
            li { "Save. New events appear under " a href="/events" { "Events" } " within seconds." }
        }
    }
}
