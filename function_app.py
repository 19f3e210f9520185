"""Azure Functions entry point: wiring only. The logic lives in the `shared` package."""

import azure.functions as func

from shared.http_api import bp as identities_http
from shared.sample_jobs import bp as sample_jobs
from shared.sweep_triggers import bp as sweep_triggers

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(identities_http)
app.register_functions(sweep_triggers)
app.register_functions(sample_jobs)
