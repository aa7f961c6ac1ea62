"""Which Kafka topic an event goes to: by the aggregate of its type, as in the ADR.

``Order.Placed`` -> ``order.events``; the mapping from aggregate (the part before the dot) to
topic is configuration; an aggregate with no route is a configuration error found at start-up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from gateway.errors import ConfigError

DEFAULT_ROUTES: Final[Mapping[str, str]] = {
    "Order": "order.events",
    "Payment": "payment.events",
    "User": "user.events",
    "Product": "catalog.events",
    "Catalog": "catalog.events",
    "Inventory": "inventory.events",
    "Email": "notification.events",
    "Notification": "notification.events",
    "Sms": "notification.events",
    "Push": "notification.events",
}


class TopicRouter:
    def __init__(self, routes: Mapping[str, str]) -> None:
        self._routes = dict(routes)

    @property
    def topics(self) -> set[str]:
        return set(self._routes.values())

    def topic_for(self, event_type: str) -> str:
        aggregate = event_type.split(".", 1)[0]
        try:
            return self._routes[aggregate]
        except KeyError:
            raise ConfigError(f"no topic route for aggregate {aggregate!r}") from None

    def check_covers(self, event_types: Iterable[str]) -> None:
        """Fail at start-up, not at forward time, if a known event type has no route."""
        missing = sorted({t.split(".", 1)[0] for t in event_types} - set(self._routes))
        if missing:
            raise ConfigError(
                f"event types without a topic route: aggregates {', '.join(missing)}; "
                "add them to SYNC_GATEWAY_TOPIC_ROUTES"
            )
