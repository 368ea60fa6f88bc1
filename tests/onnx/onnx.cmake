# loomckpt export-onnx end to end on pretrain checkpoints (included from tests/CMakeLists.txt).
if(TARGET pretrain AND TARGET loomckpt AND TARGET export_onnx)
  add_test(NAME ExportOnnx.LoomckptExportOnnxOfPretrainCheckpoints
           COMMAND ${CMAKE_CURRENT_LIST_DIR}/export_onnx_e2e.sh $<TARGET_FILE:pretrain> $<TARGET_FILE:loomckpt>
                   ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
  set_tests_properties(ExportOnnx.LoomckptExportOnnxOfPretrainCheckpoints PROPERTIES LABELS onnx TIMEOUT 300)
endif()
