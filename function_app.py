"""Azure Functions entry point: wiring only. The logic lives in the `shared` package."""

import azure.functions as func

from shared.functions.health import bp as health
from shared.functions.http_api import bp as identities_http
from shared.functions.sample_jobs import bp as sample_jobs
from shared.functions.status_page import bp as status_page
from shared.functions.sweep_triggers import bp as sweep_triggers
from shared.telemetry import install as install_telemetry

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(identities_http)
app.register_functions(sweep_triggers)
app.register_functions(sample_jobs)
app.register_functions(status_page)
app.register_functions(health)
install_telemetry()  # audit sinks only; Azure Monitor starts on first use, where a connection string is set
