"""Models built on a :class:`lamra.backbone.Backbone`."""
