"""A person's photo library as a collection: what one file tells about itself (content hash,
size as shown, thumbnail, perceptual code), and the one command that learns a model from the
library's own photos and indexes them (:mod:`contrahash.library.build`)."""
