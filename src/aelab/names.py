"""One name for each quantity: the key a number has as a TensorBoard tag, in every JSON file, and
as a table column.

Names are ``<split>/<quantity>``. ``val`` is the validation split: the official test split unless
``data.val_size`` carves one out of the training split; ``test`` is always the official test split.
Reconstruction error is ``mse``: the mean squared error per pixel on the [-1, 1] scale.
"""

TRAIN_MSE = "train/mse"
VAL_MSE = "val/mse"
VAL_MSE_BEST = "val/mse_best"  # the lowest val/mse of any epoch: TensorBoard's HPARAMS metric
TEST_MSE = "test/mse"
VAL_PCA_MSE = "val/pca_mse"  # PCA with as many components as the latent size, fit on train
TEST_PCA_MSE = "test/pca_mse"
TEST_MSE_PER_CLASS = "test/mse_per_class"  # a dict: class name -> test/mse of that class
# Latent-space measures (src/analyze.py); clustering scores are latent/<method>_<acc|nmi|ari>.
KNN_ACCURACY = "latent/knn_accuracy"
LINEAR_PROBE_ACCURACY = "latent/linear_probe_accuracy"
KMEANS_ACC = "latent/kmeans_acc"
UMAP_GMM_ACC = "latent/umap_gmm_acc"
TRUSTWORTHINESS = "latent/trustworthiness"  # latent/trustworthiness_<map> per 2-D map
ANOMALY_AUROC = "test/anomaly_auroc"  # one-class runs: reconstruction error as a score for "other class"
NORMAL_CLASSES = "normal_classes"  # one-class runs: the names of the classes trained on (data.keep_classes)
# TensorBoard's group for the figures eval and analyze add to a run. It opens the first two groups in
# name order, so this one sorts after train/ and val/: the loss curves stay on the first screen.
FIGURES = "views"
# What a fit reports back through trainer.callback_metrics besides metrics, so that the train task
# reads them the same way after a fit in this process and after one in DDP processes it spawned.
EPOCHS = "epochs"  # epochs done when the fit ended
EPOCH_TIMES = "epoch_times_s"  # wall seconds of each epoch this fit ran (aelab.callbacks.EpochTimer)
LOSS = "loss"  # the optimised objective: logged as <split>/loss only when it has more than one term


def metric(split: str, term: str) -> str:
    return f"{split}/{term}"


# What a checkpoint adds to Lightning's own keys so that it can be rebuilt anywhere: the registered
# classes of its LightningModule and datamodule (their arguments are Lightning's
# ``hyper_parameters`` and ``datamodule_hyper_parameters``).
MODEL_CLASS_KEY = "aelab_model_class"
DATA_CLASS_KEY = "aelab_data_class"
EPOCH_SUMS_KEY = "aelab_epoch_sums"
IDENTITY_KEY = "identity"  # in run_summary.json and checkpoints: what the run is (aelab.runs.run_identity)
OVERRIDES_KEY = "aelab_overrides"  # the run's command-line overrides: ckpt_path= alone resumes it as started
