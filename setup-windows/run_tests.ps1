# Windows counterpart of the README's test command. Run from the repository root after setup_venv.ps1.
# The tests read WikiText from ..\shared\data\wikitext-103-raw or from the folder in $env:WIKITEXT_DIR.
$ErrorActionPreference = "Stop"
$env:HF_HUB_OFFLINE = "1"
$env:HF_DATASETS_OFFLINE = "1"
.\.venv\Scripts\ruff.exe check .
if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
.\.venv\Scripts\python.exe -m pytest -q
