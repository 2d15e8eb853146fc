"""The verifier service (`hardhost serve`): the fleet attested on a schedule, drift reset
within a budget, state changes sent as signed webhooks, everything recorded in a database."""
