"""The implementation of :mod:`emdtree.tensorflow`, documented there."""

from __future__ import annotations

from typing import Any

try:
    import tensorflow as tf
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'emdtree.tensorflow needs TensorFlow: pip install "emdtree[tensorflow]"'
    ) from exc

try:
    import keras
except ImportError as exc:  # pragma: no cover - keras ships with tensorflow >= 2.16
    raise ImportError(
        'emdtree.tensorflow needs Keras 3: pip install "emdtree[tensorflow]"'
    ) from exc

from . import losses as _losses, tf_native as _tf_native
from ..engine.inputs import resolve_tree
from ..trees.tree import Tree

__all__ = ["EMDLoss", "emd_loss"]


def _in_xla_context() -> bool:
    try:
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover - private module moved
        return False
    return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))


def _is_sparse_target(y_true: tf.Tensor, y_pred: tf.Tensor, ax: int) -> bool:
    """Class indices: an integer target, or one without the bin axis (Keras casts
    targets to the loss's float dtype), or with a bin axis of length 1 against
    several bins, as Keras' sparse losses accept."""
    if y_true.dtype.is_integer:
        return True
    rank_true, rank_pred = y_true.shape.rank, y_pred.shape.rank
    if rank_true == rank_pred - 1:
        return True
    n_bins = y_pred.shape[ax]
    return rank_true == rank_pred and y_true.shape[ax] == 1 and n_bins is not None and n_bins != 1


def _emd_rows(p: tf.Tensor, q: tf.Tensor, token: int, rho: float, check: bool, sparse: bool,
              applied: str | None = None) -> tf.Tensor:
    """EMD^rho of each row of ``p`` (rows, n_bins) against ``q``, with its gradient."""

    tree = _losses.tree_of(token)  # held by the closure, so by the graph that calls it

    def kernels(p_np, q_np):
        if sparse and q_np.dtype.kind == "f":  # Keras hands class indices over as floats
            q_np = _losses.float_labels(q_np, p_np.shape[-1], "y_true")
        return _losses.value_grad(p_np, q_np, tree, rho, want_grad=True, check=check,
                                  names=("y_pred", "y_true"), applied=applied)

    def forward(p, q):
        value, grad = tf.numpy_function(kernels, [p, q], [p.dtype, p.dtype], stateful=False)
        value.set_shape(p.shape[:1])
        grad.set_shape(p.shape)
        return value, grad

    def kernels_hvp(p_np, q_np, v_np):
        if sparse and q_np.dtype.kind == "f":
            q_np = _losses.float_labels(q_np, p_np.shape[-1], "y_true")
        return _losses.hvp(p_np, q_np, v_np.astype(p_np.dtype, copy=False), tree, rho)

    def hvp(p, q, v):
        out = tf.numpy_function(kernels_hvp, [p, q, v], p.dtype, stateful=False)
        out.set_shape(p.shape)
        return out

    return _tf_native.differentiable(forward, hvp, rho, sparse)(p, q)


def _checked(y_pred: tf.Tensor, normalize: str, ax: int) -> tf.Tensor:
    """``y_pred`` after the rules of ``normalize`` on its raw entries
    (:func:`emdtree.engine.semantics.check_raw`), which the normalisation would
    otherwise turn into NaN elsewhere: at once when eager, when the graph runs in a
    ``tf.function`` (on the host, so not under XLA)."""
    if tf.executing_eagerly():
        _losses.check_normalizable(y_pred.numpy(), normalize, ax, "y_pred")
        return y_pred

    def check(x):
        import numpy as np

        _losses.check_normalizable(x, normalize, ax, "y_pred")
        return np.bool_(True)

    done = tf.numpy_function(check, [y_pred], tf.bool, stateful=True)
    with tf.control_dependencies([done]):
        return tf.identity(y_pred)


def emd_loss(
    y_true: Any,
    y_pred: Any,
    tree: Tree | None = None,
    rho: float = 2.0,
    normalize: str | None = None,
    axis: int = -1,
    check_inputs: bool = True,
) -> tf.Tensor:
    """EMD^rho between targets and predicted distributions on a tree, per sample.

    For each sample, ``EMD^rho(p, q) = sum_i w_i |phi_i|^rho`` over the
    non-root nodes ``i`` of ``tree`` (paper eq. 7), where ``p`` is the
    (optionally normalised) prediction, ``q`` the target and ``phi_i`` the
    mass of ``p - q`` under node ``i``.

    Parameters
    ----------
    y_true : Tensor
        Target distributions of the shape of ``y_pred`` (equal totals), or
        class indices: integers, or floats holding integers, of the shape of
        ``y_pred`` without the bin axis or with a bin axis of length 1.
        Distribution targets receive gradients too.
    y_pred : Tensor, shape (..., n_bins, ...)
        Predicted masses, or logits with ``normalize="softmax"``; float32 or
        float64 (float16 and bfloat16 are computed in float32).
    tree : Tree, optional
        Ground space; default: a chain with unit spacing (ordinal classes).
    rho : float, default 2.0
        Exponent, >= 1: 2 is the paper's smooth loss, 1 the exact EMD.
    normalize : {None, "softmax", "l1"}, optional
        Applied to ``y_pred`` along the bin axis first, as TensorFlow
        operations. A ``-inf`` logit masks its class (probability and gradient
        0); ``+inf``, NaN and a row of ``-inf`` only are errors naming the entry.
    axis : int, default -1
        The bin axis.
    check_inputs : bool, default True
        Check that masses are finite, non-negative and have equal totals,
        and that class indices are in range.

    Returns
    -------
    Tensor, shape (...)
        One loss per sample, in the dtype of ``y_pred``.

    Raises
    ------
    TypeError
        For a prediction that is not floating point.
    ValueError
        For mismatched shapes, a bin axis that does not match the tree, and
        (naming the entry) negative or non-finite masses, unequal totals or
        class indices out of range; inside a ``tf.function`` the value
        errors surface as ``tf.errors.InvalidArgumentError``.

    Examples
    --------
    >>> import tensorflow as tf
    >>> from emdtree.tensorflow import emd_loss
    >>> y_pred = tf.constant([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]])
    >>> emd_loss(tf.constant([1, 1]), y_pred).numpy()  # rho=2: half the mass moves one bin
    array([0.25, 0.  ], dtype=float32)
    """
    rho = _losses.check_rho_value(rho)
    normalize = _losses.check_normalize(normalize)
    y_pred = tf.convert_to_tensor(y_pred)
    y_true = tf.convert_to_tensor(y_true)
    if not y_pred.dtype.is_floating:
        raise TypeError(f"y_pred must be floating point, got dtype {y_pred.dtype.name}")
    if not (y_true.dtype.is_floating or y_true.dtype.is_integer):
        raise TypeError(f"y_true must hold probabilities or class indices, got dtype {y_true.dtype.name}")
    rank = y_pred.shape.rank
    if rank is None:
        raise ValueError("y_pred must have a known rank")
    ax = _losses.check_axis(axis, rank, "y_pred")
    n_bins = y_pred.shape[ax]
    if n_bins is None:
        raise ValueError(f"the bin axis {axis} of y_pred must have a known length")
    token = _losses.check_tree(tree, n_bins)
    sparse = _is_sparse_target(y_true, y_pred, ax)
    if sparse and y_true.shape.rank == rank:
        y_true = tf.squeeze(y_true, axis=ax)
    want = y_pred.shape[:ax] + y_pred.shape[ax + 1:] if sparse else y_pred.shape
    if not want.is_compatible_with(y_true.shape):
        what = "class indices" if sparse else "target distributions"
        raise ValueError(f"y_true has shape {y_true.shape} but y_pred has shape {y_pred.shape}: "
                         f"expected {what} of shape {want}")

    out_dtype = y_pred.dtype
    if y_pred.dtype not in (tf.float32, tf.float64):
        y_pred = tf.cast(y_pred, tf.float32)
    if check_inputs and normalize is not None and not _in_xla_context():
        y_pred = _checked(y_pred, normalize, ax)
    perm = [i for i in range(rank) if i != ax] + [ax]
    p = y_pred if ax == rank - 1 else tf.transpose(y_pred, perm)
    logits = p
    if normalize == "softmax":
        p = tf.nn.softmax(p, axis=-1)
    elif normalize == "l1":
        p = p / tf.reduce_sum(p, axis=-1, keepdims=True)
    batch_shape = tf.shape(p)[:-1]
    p_rows = tf.reshape(p, [-1, n_bins])
    if sparse:
        # floats stay floats up to the kernels, which refuse 0.4 or NaN instead of truncating them
        q_rows = tf.reshape(y_true if y_true.dtype.is_floating else tf.cast(y_true, tf.int64), [-1])
    else:
        q = y_true if ax == rank - 1 else tf.transpose(y_true, perm)
        # a float32 target stays float32 next to float64 predictions, so that its mass is checked to
        # float32's precision, as emdtree.emd and the torch loss do
        if not (q.dtype == tf.float32 and p.dtype == tf.float64):
            q = tf.cast(q, p.dtype)
        q_rows = tf.reshape(q, [-1, n_bins])
    if _in_xla_context() or _tf_native.is_preferred(p_rows):
        if check_inputs and tf.executing_eagerly():
            _losses.value_grad(p_rows.numpy(), q_rows.numpy(), tree, rho, want_grad=False, check=True,
                               names=("y_pred", "y_true"), applied=normalize)
        if sparse and q_rows.dtype.is_floating:  # checked above when eager; traced: cast as Keras does
            q_rows = tf.cast(q_rows, tf.int64)
        elif not sparse:
            q_rows = tf.cast(q_rows, p_rows.dtype)
        if normalize == "softmax":  # the softmax and the loss under one gradient
            value = _tf_native.emd_rows(tf.reshape(logits, [-1, n_bins]), q_rows, resolve_tree(tree, n_bins),
                                        rho, sparse, softmax=True)
        else:
            value = _tf_native.emd_rows(p_rows, q_rows, resolve_tree(tree, n_bins), rho, sparse)
    else:
        value = _emd_rows(p_rows, q_rows, token, rho, check_inputs, sparse, normalize)
    value = tf.reshape(value, batch_shape)
    value.set_shape(p.shape[:-1])
    return tf.cast(value, out_dtype)


class EMDLoss(keras.losses.Loss):
    """EMD^rho on a tree as a :class:`keras.losses.Loss`; see :func:`emd_loss`.

    Keras reductions apply (``"sum_over_batch_size"``, ``"sum"``, ``"mean"``,
    ``"mean_with_sample_weight"``, ``None``), and so do sample weights. The
    configuration stores the tree as :meth:`Tree.to_dict`, so a saved model
    loads again with ``keras.models.load_model`` once this module is
    imported. Models compile with or without XLA (``jit_compile``).

    Parameters
    ----------
    tree, rho, normalize, axis, check_inputs
        As in :func:`emd_loss`.
    reduction : str or None, default "sum_over_batch_size"
        Keras reduction of the per-sample losses.
    name : str, default "emd_loss"
        Name of the loss.
    dtype : str or keras.DTypePolicy, optional
        Dtype of the loss computation (Keras' compute dtype by default).

    Examples
    --------
    >>> import tensorflow as tf, emdtree
    >>> from emdtree.tensorflow import EMDLoss
    >>> tree = emdtree.Tree.from_nested({"cat": None, "tiger": None, "vehicle": ["starship"]})
    >>> loss = EMDLoss(tree, normalize="softmax")
    >>> logits = tf.constant([[4.0, 0.0, 0.0], [4.0, 0.0, 0.0]])
    >>> cheap, dear = loss([1], logits[:1]), loss([2], logits[1:])  # cat as tiger / as starship
    >>> bool(cheap < dear)
    True
    >>> EMDLoss.from_config(loss.get_config()).tree == tree
    True
    """

    def __init__(
        self,
        tree: Tree | None = None,
        rho: float = 2.0,
        normalize: str | None = None,
        axis: int = -1,
        check_inputs: bool = True,
        reduction: str | None = "sum_over_batch_size",
        name: str = "emd_loss",
        dtype: Any = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if tree is not None and not isinstance(tree, Tree):
            raise TypeError(f"tree must be an emdtree.Tree or None, got {type(tree).__name__}")
        self.tree = tree
        self.rho = _losses.check_rho_value(rho)
        self.normalize = _losses.check_normalize(normalize)
        self.axis = axis
        self.check_inputs = check_inputs

    def call(self, y_true, y_pred):
        return emd_loss(y_true, y_pred, self.tree, self.rho, self.normalize, self.axis, self.check_inputs)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            tree=None if self.tree is None else self.tree.to_dict(),
            rho=self.rho,
            normalize=self.normalize,
            axis=self.axis,
            check_inputs=self.check_inputs,
        )
        return config

    @classmethod
    def from_config(cls, config: dict) -> EMDLoss:
        config = dict(config)
        tree = config.pop("tree", None)
        return cls(tree=None if tree is None else Tree.from_dict(tree), **config)


# Registered by a call, not as a decorator (it returns the class itself), so that the
# class stays a class for the documentation's stand-in of Keras where Keras is absent.
keras.saving.register_keras_serializable(package="emdtree")(EMDLoss)
