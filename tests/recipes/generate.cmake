# End-to-end tests of the generate program (included from tests/CMakeLists.txt): tests/recipes/generate_e2e.sh.
if(TARGET generate AND TARGET pretrain AND TARGET loomckpt AND TARGET trainlaunch)
  foreach(c cli torch_gpt2 torch_llama sample_layouts)
    add_test(NAME Generate.${c} COMMAND ${CMAKE_CURRENT_LIST_DIR}/generate_e2e.sh ${c} ${PROJECT_BINARY_DIR}
                                        ${PROJECT_SOURCE_DIR})
    set_tests_properties(Generate.${c} PROPERTIES LABELS recipes TIMEOUT 600)
  endforeach()
endif()
