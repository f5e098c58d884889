"""The modules, their math and their files: codes, the SAE, the NFM, the joint model, SAE formats of other libraries,
loading earlier stages."""
