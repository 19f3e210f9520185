"""Crash points: each row fails one step at a stand-in; the next run must finish the job."""

from __future__ import annotations

# Each row fails one step of bootstrap at the stand-in; the next request must finish the job.
BOOTSTRAP_CRASH_POINTS = [
    ("certificate create", {"service": "keyvault", "method": "POST", "path": "/create$", "status": 403}),
    ("app create", {"service": "graph", "method": "POST", "path": r"/applications$", "status": 500}),
    # The wait for the version, after the Graph steps made while it was issued (the first poll is the
    # observation's look for a creation in progress).
    ("certificate issuance", {"service": "keyvault", "method": "GET", "path": "/pending$", "status": 403,
                              "after": 1}),
    ("service principal", {"service": "graph", "method": "POST", "path": r"/servicePrincipals$", "status": 500}),
    ("consent", {"service": "graph", "method": "POST", "path": r"/appRoleAssignedTo$", "status": 500}),
    ("key credential", {"service": "graph", "method": "PATCH", "path": r"/applications/[^/(]+$", "status": 500}),
    ("role assignment", {"service": "graph", "method": "POST", "path": r"/roleAssignments$", "status": 500}),
    ("sign-in proof", {"service": "entra", "method": "POST", "path": r"/oauth2/v2.0/token$", "status": 400,
                       "count": 50}),
    ("connection record", {"service": "keyvault", "method": "PUT", "path": r"^/secrets/", "status": 403}),
    ("outcome tags", {"service": "keyvault", "method": "PATCH", "path": r"^/certificates/", "status": 403}),
]


# Each row fails one step of the decommission at the stand-in; the next DELETE must finish it, and
# nothing in between (a bootstrap, a rotation) may bring the identity back.
DECOMMISSION_CRASH_POINTS = [
    ("role assignment", {"service": "graph", "method": "DELETE", "path": r"/roleAssignments/", "status": 500}),
    ("consent", {"service": "graph", "method": "DELETE", "path": r"/appRoleAssignedTo/", "status": 500}),
    ("service principal", {"service": "graph", "method": "DELETE", "path": r"/servicePrincipals/[^/]+$",
                           "status": 500}),
    ("application", {"service": "graph", "method": "DELETE", "path": r"/applications/", "status": 500}),
    ("connection secret", {"service": "keyvault", "method": "DELETE", "path": r"^/secrets/", "status": 403}),
    ("certificate", {"service": "keyvault", "method": "DELETE", "path": r"^/certificates/", "status": 403}),
]
