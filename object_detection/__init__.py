"""COCO detection with HorNet on mmdet 3.x: the HorFPN neck, configs and train/test scripts."""
