"""Stand-ins for the outside world, for the demo, rehearsals and tests: the bulk API
emulator.  Production code never imports this package at module level."""
