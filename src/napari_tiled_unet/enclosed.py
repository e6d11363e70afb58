"""No object lies inside another: whatever an object encloses takes its id.

A bright spot inside a large nucleus (a chromocentre, the edge of a nucleolus) can grow a
seed and a boundary ring of its own and so become a small object inside the nucleus, often
with a thin ring of background around it. No nucleus lies inside another, so post-processing
merges such fragments, and the background around them, into the object that encloses them.

Rule
----
A region (another object, or background) is *enclosed* by object A when every 4-connected
path from it to the edge of the image crosses A: it lies in a hole of A, with A taken as
8-connected and holes as 4-connected, the convention of ``scipy.ndimage.binary_fill_holes``.
Enclosures nest (if A and B both enclose a pixel, one of them lies in a hole of the other),
so every enclosed pixel has one outermost enclosing object, and takes its id. An object
that only several objects together surround is left alone.

Speed
-----
No Python loop runs over objects. Only an object with a hole can enclose anything, and they
are found by Euler numbers: for 8-connected objects, Euler number
(pieces - holes) = V - E + F - D per object (the 4-connected count V - E + F less the diagonal
bit-quads, after Gray, IEEE Trans. Comput. C-20, 1971), with V its pixels, E its 4-adjacent
pixel pairs, F its 2x2 squares and D the 2x2 windows in which it holds exactly one diagonal
pair: a few comparisons over the image and ``np.bincount`` over the pixels along boundaries.
An object in one piece has a hole exactly when its number is below 1; every object whose
number is not 1 is flagged. Then one ``scipy.ndimage.label`` of the pixels outside the flagged
objects gives the regions they cut off from the image's edge; a region that touches one
flagged object only lies in a hole of it (its neighbours are all that object) and takes its
id; such a region is one whole hole, so the object's Euler number goes up by one. What lies
in a hole of an outer object that also holds a flagged object (one with holes of its own) is
taken in the next round, once the inner object has no hole left and is no longer flagged; the
rounds end when no object loses its last hole. So there is one round per level of nesting,
usually one: the cost does not grow with the number of objects, with holes or without.

Blockwise
---------
Everything an object encloses lies inside its bounding box. When the objects are at most
``overlap`` pixels wide and tall and labels are right within ``overlap`` of a block (see
:mod:`napari_tiled_unet.postprocess`), every object that encloses a pixel of the block lies
wholly in that window, so the merge computed on the window is the whole image's merge on
the block. An object cut by the window's edge can only look as if it encloses less (or, in
several pieces, escape the screen): neither touches the block itself.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def euler_numbers(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Which of the ids 0..n are present in a 2-D label image, and the Euler number (pieces
    minus holes) of each: a bool and an int64 array of n + 1.

    Objects are 8-connected and their holes 4-connected; an absent id scores 0. ``labels``
    holds ids 0..n (any integer type). Each pixel carries the terms V - E + F - D of the
    pairs and 2x2 windows it starts (the anti-diagonal pair: its top right pixel); inside an
    object or the background they cancel, so one ``np.bincount`` over the few pixels with a
    non-zero sum (along boundaries) adds them up per object. Every object has such a pixel
    (its last pixel in raster order scores 1), which tells which ids are present.
    """
    weight = np.ones(labels.shape, np.int8)  # V
    right = labels[:, :-1] == labels[:, 1:]
    down = labels[:-1] == labels[1:]
    weight[:, :-1] -= right  # E, horizontal
    weight[:-1] -= down  # E, vertical
    ab, cd, ac, bd = right[:-1], right[1:], down[:, :-1], down[:, 1:]
    weight[:-1, :-1] += ab & cd & ac  # F
    weight[:-1, :-1] -= (labels[:-1, :-1] == labels[1:, 1:]) & ~ab & ~ac  # D, main diagonal
    weight[:-1, 1:] -= (labels[:-1, 1:] == labels[1:, :-1]) & ~ab & ~bd  # D, other diagonal
    edge = weight != 0
    ids = labels[edge]
    present = np.bincount(ids, minlength=n + 1) > 0
    euler = np.rint(np.bincount(ids, weight[edge], minlength=n + 1)).astype(np.int64)
    return present, euler


def _fill_from(labels: np.ndarray, barrier_ids: np.ndarray) -> np.ndarray:
    """One round: every region that the objects flagged in ``barrier_ids`` cut off from the
    array's edge, and that touches only one of them, takes that object's id (in place).

    Regions are the 4-connected components of the pixels outside those objects (background
    and other objects alike); such a region is one whole hole of the object it touches.
    Returns the ids of the objects that filled a hole, once per hole.
    """
    barrier = barrier_ids[labels]
    padded, n = ndi.label(np.pad(~barrier, 1, constant_values=True))
    regions = padded[1:-1, 1:-1]  # 0 on the flagged objects
    # (region, flagged object) across every 4-neighbour pair: whole-array shifts, so the cost
    # follows the image's size, not the area the regions cover
    found, owners = [], []
    top, bottom = (slice(None, -1), slice(None)), (slice(1, None), slice(None))
    left, right = (slice(None), slice(None, -1)), (slice(None), slice(1, None))
    for here, there in ((top, bottom), (bottom, top), (left, right), (right, left)):
        on = barrier[there] & ~barrier[here]
        found.append(regions[here][on])
        owners.append(labels[there][on])
    found, owners = np.concatenate(found).astype(np.int64), np.concatenate(owners)
    cut_off = found != padded[0, 0]  # regions reaching the edge are not holes
    span = int(barrier_ids.size)
    keys = np.unique(found[cut_off] * span + owners[cut_off])
    region, owner = keys // span, keys % span
    single = np.bincount(region, minlength=n + 1)[region] == 1
    if single.any():
        fill = np.zeros(n + 1, labels.dtype)
        fill[region[single]] = owner[single]
        new = fill[regions]
        np.copyto(labels, new, where=new > 0)
    return owner[single]


def absorb_enclosed(labels: np.ndarray) -> np.ndarray:
    """Give everything an object encloses (other objects, background) that object's id.

    Parameters
    ----------
    labels : np.ndarray
        Integer (Y, X) object ids, 0 for background; ids may be any non-negative numbers
        (a block's global ids). Changed in place.

    Returns
    -------
    np.ndarray
        ``labels``, where every pixel lying in a hole of an object now carries the id of
        its outermost enclosing object (see the module's docstring for the rule).
    """
    if labels.ndim != 2 or labels.size == 0:
        return labels
    top = int(labels.max())
    if top < 1:
        return labels
    ids = None
    local = labels
    if top > labels.size:  # sparse global ids (a block of a large image): count them compactly
        ids, local = np.unique(labels, return_inverse=True)
        local = local.reshape(labels.shape)
        top = len(ids) - 1 if ids[0] == 0 else len(ids)
        if ids[0] != 0:
            local = local + 1
            ids = np.concatenate([[0], ids])
    present, euler = euler_numbers(local, top)
    flagged = present & (euler != 1)
    flagged[0] = False
    while flagged.any():  # one round per level of nesting (objects inside objects inside ...)
        euler += np.bincount(_fill_from(local, flagged), minlength=top + 1)  # a hole less each
        still = flagged & (euler != 1)
        if np.array_equal(still, flagged):  # no object lost its last hole: nothing new to find
            break
        flagged = still
    if ids is not None:
        labels[...] = ids[local]
    return labels
