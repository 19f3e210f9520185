"""The job runtime: the connection record (`connection()`), the Exchange client and the job helper.
What an unattended job imports; it never loads the reconciler, planner or Graph gateways."""
