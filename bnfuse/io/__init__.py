"""Reading and writing the bytes and text of Caffe models: prototxt, caffemodel, outputs."""
