"""A trained network as a scikit-learn feature extractor.

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    classifier = make_pipeline(FeatureExtractor(pretrained), LogisticRegression())
    classifier.fit(x_train, y_train)

The network is cut below its head (or at the layer named by ``upto``) and
its flattened activations become the features of any scikit-learn
estimator: transfer learning with a frozen backbone and a classical head.
"""

from sklearn.base import BaseEstimator, TransformerMixin

__all__ = ["FeatureExtractor"]


class FeatureExtractor(TransformerMixin, BaseEstimator):
    """Transforms images (N, C, H, W) into the activations of ``model`` up to ``upto``.

    Parameters
    ----------
    model : Sequential
        A trained model; it is used as it is and never trained here.
    upto : str or int, optional
        The last layer kept; by default everything below the head.
    batch_size : int
    """

    def __init__(self, model, upto=None, batch_size=256):
        self.model = model
        self.upto = upto
        self.batch_size = batch_size

    def fit(self, x, y=None):
        """Nothing to learn: the network is already trained."""
        return self

    def transform(self, x):
        """Features, (N, features)."""
        return self.model.extract_features(x, upto=self.upto, batch_size=self.batch_size)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        return tags
