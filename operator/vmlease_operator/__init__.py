"""vmlease operator: kopf handlers over plain allocation and state functions."""
