"""Adapters to the services: Microsoft Graph (client and directory gateway), Key Vault, and the
platform's own credential. Side effects live here; each turns service errors into product errors."""
