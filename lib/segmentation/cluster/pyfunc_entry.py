"""MLflow's models-from-code entry for the segmenter (cluster/pyfunc.py): the model is logged as this
file plus the package (code_paths), never as a pickle. Only MLflow imports it."""

from mlflow.models import set_model

from segmentation.cluster.pyfunc import SegmenterModel

set_model(SegmenterModel())
