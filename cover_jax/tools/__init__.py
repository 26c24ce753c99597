"""Tools over configs and runs: the compile plan and the data-scarcity study."""
