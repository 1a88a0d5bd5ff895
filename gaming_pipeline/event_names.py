"""The event names the pipeline gives a meaning of its own, declared once: the ingest service
checks that a purchase has an amount (and nothing else does), the KPIs count purchases and
their bookings, and the generator draws them. Any other `eventName` is taken as the client
sends it."""

PURCHASE = "purchaseEvent"
