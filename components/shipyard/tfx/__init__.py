"""The TFX custom component: shipyard as a Pusher. The executor only coordinates the core
(shipyard.steps.ship); nothing here decides how a model is exported, verified or published."""
