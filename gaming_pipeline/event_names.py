"""The event names and parameters the pipeline gives a meaning of its own, declared once: the
ingest service checks that a purchase has an amount (and nothing else does), the KPIs count
purchases and their bookings, the progression funnel and revenue by item, and the generator
draws them. Any other `eventName` a game's catalog declares is taken as the client sends it."""

PURCHASE = "purchaseEvent"
# The events every game's catalog starts from: the seed's, with its eventParams fields only.
SEED_EVENTS = ("gameStart", "levelUp", "scoreAdjustment", "itemCollected", PURCHASE, "gameEnd")
# The seed's eventParams fields, in the order of the raw table's struct (lib/events.py).
SEED_PARAMS = (
    "game_keyword",
    "app_name",
    "scoreAdjustment",
    "platform",
    "app_version",
    "device_id",
    "client_event_time",
    "amount",
)

# A game's progression, as GameAnalytics counts it: a level started, then completed or failed.
# A catalog that declares one of these events declares its `level` as a required integer;
# kpi_progression_funnel counts them per level.
LEVEL_STARTED, LEVEL_COMPLETED, LEVEL_FAILED = "levelStarted", "levelCompleted", "levelFailed"
PROGRESSION = (LEVEL_STARTED, LEVEL_COMPLETED, LEVEL_FAILED)
LEVEL = "level"
# What a purchase bought: a string a catalog may declare on purchaseEvent; kpi_revenue_by_item
# sums purchases' amounts by it.
ITEM = "item_id"
