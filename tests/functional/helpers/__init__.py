"""Helpers of the functional tests: the cluster and fault fixtures, probes, a confirm-swallowing proxy."""
