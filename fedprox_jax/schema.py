"""What a run's files mean: the columns of its rows and the classes of its config's fields.

A module of the bottom layer (it imports nothing), so that whatever writes the files (run/)
and whatever reads them back (report/) agree on one definition.
"""

# The columns of metrics.jsonl (a run) and results.csv (a sweep). One name, one meaning.
ROW_FIELDS = {
    "round": "the round after which the global model was evaluated",
    "test_accuracy": "the global model's accuracy on the test set",
    "test_loss": "the global model's mean cross-entropy on the test set",
    "local_train_loss": "mean minibatch loss of the round's trained clients during their local "
                        "steps (n_k-weighted); null when every client was dropped",
    "global_train_loss": "the global model's mean cross-entropy on all training examples "
                         "(sweeps; the paper's Figure 1 training loss)",
    "dissimilarity": "mean_k ||grad f_k - grad f||^2 at the global model (sweeps; the "
                     "authors' code's 'gradient difference')",
    "b_dissimilarity": "the paper's B-local dissimilarity (Definition 3) at the global model: "
                       "sqrt(sum_k p_k ||grad f_k||^2) / ||grad f||, p_k = n_k / n, 1 for "
                       "identical clients (sweeps; null where grad f = 0)",
    "gamma_mean": "the paper's gamma-inexactness (Definition 1), ||grad h_k(w_k; w_t)|| / "
                  "||grad h_k(w_t; w_t)|| with h_k the client's local objective, mean over the "
                  "round's clients that trained (config.inexactness)",
    "gamma_max": "the largest gamma of the round's clients that trained (config.inexactness)",
    "mu": "the proximal weight this round's clients trained with (moves only with adaptive mu)",
    "num_stragglers": "sampled clients that straggled this round",
    "num_aggregated": "clients whose models were averaged",
    "all_dropped": "every client was dropped: the global model was kept",
    "useful_steps": "client SGD steps the round needed",
    "executed_steps": "lane steps the round computed (useful + masked)",
    "step_efficiency": "useful_steps / executed_steps",
    "wall_time": "seconds of the round loop up to this row, over every resumed segment",
}

# Fields that cannot change a run's results (the data itself is compared by its digest).
NO_EFFECT_FIELDS = ("variant", "data_source", "data_dir", "embeddings", "download", "allow_modified_mnist",
                    "genuine_mnist", "tensorboard", "checkpoint_every", "autotune", "autotuned",
                    "sweep.concurrent_programs")
# Fields that change how the work is laid out, at most the last float bits of the results.
LAYOUT_FIELDS = ("num_lanes", "num_devices", "conv_impl", "eval_conv_impl", "eval_batch_size",
                 "sweep.experiments_per_program")
# Fields added after workdirs were written (issue 24): an older workdir's config lacks them, and
# its results are those of these values, so a resume compares it as if it had them.
ADDED_FIELDS = {"partition": "power_law", "dirichlet_beta": 0.5, "algorithm": "",
                "momentum": 0.0, "server_lr": None, "server_momentum": 0.9,
                "server_beta2": 0.99, "server_tau": 0.001, "sweep.splits": "",
                "sweep.global_train_loss": True}
