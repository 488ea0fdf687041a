"""HTTP routers, one per concern: the codec endpoints and the operational ones."""
