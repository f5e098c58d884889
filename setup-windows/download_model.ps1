# Download what the paper preset reads from the Hugging Face hub, once, into the local HF cache,
# so that later runs work offline (set HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1 afterwards).
# Run from the repository root after setup_venv.ps1:  powershell -ExecutionPolicy Bypass -File setup-windows\download_model.ps1
$ErrorActionPreference = "Stop"
$py = ".\.venv\Scripts\python.exe"
# OpenLLaMA-3B: weights (about 6.9 GB in fp16) and the sentencepiece tokenizer its authors advise (use_fast=False).
& $py -c "from huggingface_hub import snapshot_download; print(snapshot_download('openlm-research/open_llama_3b'))"
# WikiText-103 raw (train for the stages, test for the KL tests).
& $py -c "import datasets; datasets.load_dataset('wikitext', 'wikitext-103-raw-v1')"
