"""The converter: datasets -> sharded TFRecords and a manifest, the first stage of the pipeline.

    convert      the writer: a source's Plan -> shards + manifest, whole or not at all
    voc_sbd      PASCAL VOC 2012 + SBD source          folders, masks   your own dataset's source
    examples     one example: read, check, encode      layout           what the folder holds
    workers      processes that prepare examples       publish, recover putting the set in place

Each name lives in its own module; import it from there (nothing is re-exported here).
"""
