//! The messages a page shows after a form redirected to it (`?notice=<code>`). Only these fixed
//! texts can be shown, so a link cannot make the console say anything else.

/// A message shown at the top of a page after an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// A connection was deleted.
    ConnectionDeleted,
    /// A test event was posted.
    TestEventSent,
    /// A subscription was saved.
    SubscriptionSaved,
    /// A subscription was enabled.
    SubscriptionEnabled,
    /// A subscription was disabled.
    SubscriptionDisabled,
    /// A subscription was deleted.
    SubscriptionDeleted,
    /// An event was replayed.
    EventReplayed,
    /// A delivery was scheduled again.
    DeliveryRetried,
    /// Every dead delivery of a subscription was scheduled again.
    DeadRetried,
    /// A dynamic webhook was registered in Jira.
    JiraWebhookRegistered,
    /// A dynamic webhook was deleted in Jira.
    JiraWebhookDeleted,
}

const ALL: [Notice; 11] = [
    Notice::ConnectionDeleted,
    Notice::TestEventSent,
    Notice::SubscriptionSaved,
    Notice::SubscriptionEnabled,
    Notice::SubscriptionDisabled,
    Notice::SubscriptionDeleted,
    Notice::EventReplayed,
    Notice::DeliveryRetried,
    Notice::DeadRetried,
    Notice::JiraWebhookRegistered,
    Notice::JiraWebhookDeleted,
];

impl Notice {
    /// Its code in the query string.
    pub fn code(self) -> &'static str {
        match self {
            Self::ConnectionDeleted => "connection-deleted",
            Self::TestEventSent => "test-event-sent",
            Self::SubscriptionSaved => "subscription-saved",
            Self::SubscriptionEnabled => "subscription-enabled",
            Self::SubscriptionDisabled => "subscription-disabled",
            Self::SubscriptionDeleted => "subscription-deleted",
            Self::EventReplayed => "event-replayed",
            Self::DeliveryRetried => "delivery-retried",
            Self::DeadRetried => "dead-retried",
            Self::JiraWebhookRegistered => "jira-webhook-registered",
            Self::JiraWebhookDeleted => "jira-webhook-deleted",
        }
    }

    /// What the page says.
    pub fn text(self) -> &'static str {
        match self {
            Self::ConnectionDeleted => "The connection was deleted.",
            Self::TestEventSent => {
                "A signed sample webhook (jira:issue_created) was posted to the connection's \
                 webhook URL. It is processed and delivered like one from Jira."
            }
            Self::SubscriptionSaved => "The subscription was saved.",
            Self::SubscriptionEnabled => {
                "The subscription is enabled; its waiting deliveries are sent now."
            }
            Self::SubscriptionDisabled => {
                "The subscription is disabled: new events are not delivered to it."
            }
            Self::SubscriptionDeleted => "The subscription was deleted.",
            Self::EventReplayed => {
                "The event was replayed: this is the new event, processed and delivered again."
            }
            Self::DeliveryRetried => "The delivery is scheduled again and is being attempted now.",
            Self::DeadRetried => {
                "Every dead delivery of the subscription is being attempted again."
            }
            Self::JiraWebhookRegistered => {
                "The webhook was registered in Jira; hookline renews it before it expires."
            }
            Self::JiraWebhookDeleted => "The webhook was deleted in Jira and here.",
        }
    }

    /// The notice of a `?notice=` code, if it is one.
    pub fn parse(code: Option<&str>) -> Option<Self> {
        let code = code?;
        ALL.into_iter().find(|notice| notice.code() == code)
    }

    /// `path` with this notice in its query string.
    pub fn url(self, path: &str) -> String {
        let separator = if path.contains('?') { '&' } else { '?' };
        format!("{path}{separator}notice={}", self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_notice_is_found_by_its_code_and_nothing_else_is() {
        for notice in ALL {
            assert_eq!(Notice::parse(Some(notice.code())), Some(notice));
        }
        assert_eq!(Notice::parse(Some("<script>")), None);
        assert_eq!(Notice::parse(None), None);
        assert_eq!(
            Notice::DeadRetried.url("/dead-letters?subscription=x"),
            "/dead-letters?subscription=x&notice=dead-retried"
        );
    }
}
