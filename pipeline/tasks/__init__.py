"""Weight-space tasks: what a metanetwork is asked to produce, with its targets, losses and metrics.

:mod:`pipeline.tasks.editing`: INR editing (dilate the image an INR represents by editing its
weights), rendered and scored through the INR itself.
"""
