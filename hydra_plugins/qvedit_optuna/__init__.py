"""qvedit's Optuna sweeper for Hydra (``hparams_search=ttlg_optuna``); see ``sweeper.py``."""
