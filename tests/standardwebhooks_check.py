"""Verifies one captured hookline delivery with the reference Standard Webhooks library.

Run by the integration tests when `standardwebhooks` is installed (pip install standardwebhooks).
Input comes from the environment: WEBHOOK_SECRET, WEBHOOK_ID, WEBHOOK_TIMESTAMP,
WEBHOOK_SIGNATURE, WEBHOOK_BODY. Exits non-zero when verification fails.
"""

import os
import sys

from standardwebhooks.webhooks import Webhook


def main() -> int:
    webhook = Webhook(os.environ["WEBHOOK_SECRET"])
    headers = {
        "webhook-id": os.environ["WEBHOOK_ID"],
        "webhook-timestamp": os.environ["WEBHOOK_TIMESTAMP"],
        "webhook-signature": os.environ["WEBHOOK_SIGNATURE"],
    }
    try:
        webhook.verify(os.environ["WEBHOOK_BODY"], headers)
    except Exception as error:  # noqa: BLE001 - report any verification failure
        print(f"verification failed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
