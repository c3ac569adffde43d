"""ADE20K semantic segmentation with HorNet backbones (mmsegmentation 1.x)."""
