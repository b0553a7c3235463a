"""hpo: hyperparameter search for the mask / gender / age competition."""
