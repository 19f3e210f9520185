"""Certificate-based automation identities for Exchange Online.

The package behind the Functions app and the admin CLI: settings, the pure planner, the Key Vault
and Graph gateways, the reconciler, and the helpers jobs use to connect.
"""
