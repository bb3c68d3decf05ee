"""Task data: the task record, readers of the published formats, generators, segmentation."""
