"""Tools a model calls during a rollout: ``sandbox`` runs model-written Python."""
