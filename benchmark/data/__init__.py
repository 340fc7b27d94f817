"""Datasets: the synthetic generator, the CholecSeg8K and folder readers, the class table, the splits and the prepare stage."""
