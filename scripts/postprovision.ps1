# azd postprovision hook (Windows / PowerShell): run scripts/postprovision.py with msgraph-sdk and
# azure-identity. Uses the project's .venv when present; otherwise a private venv under .azure\.
$ErrorActionPreference = 'Stop'
Set-Location (Join-Path $PSScriptRoot '..')
$py = Join-Path '.venv' 'Scripts\python.exe'
if (-not (Test-Path $py)) {
    $py = Join-Path '.azure' 'hooks-venv\Scripts\python.exe'
    if (-not (Test-Path $py)) {
        python -m venv (Join-Path '.azure' 'hooks-venv')
        & $py -m pip install --disable-pip-version-check --quiet -r requirements.txt
        if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
    }
}
& $py scripts/postprovision.py @args
exit $LASTEXITCODE
