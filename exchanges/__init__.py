"""Exchange adapters behind one interface (:mod:`exchanges.base`): the paper exchange and HyperLiquid."""
