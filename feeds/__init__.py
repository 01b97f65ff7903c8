"""Market-data feeds: readers that turn recorded real market data into ticks."""
