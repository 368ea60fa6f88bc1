# Memory you can plan with (included from pretrain.cmake): the per-step peak in metrics.jsonl and on the console, and
# pretrain --validate's estimate of it against the measured peak of short CPU runs (tests/recipes/memory_e2e.sh),
# and the cluster configs that are planned by it (each validates at its world size and fits 80 GB by the estimate).
if(TARGET pretrain AND TARGET trainlaunch)
  foreach(c peak estimate)
    add_test(NAME Pretrain.memory_${c}
             COMMAND ${CMAKE_CURRENT_LIST_DIR}/memory_e2e.sh ${c} $<TARGET_FILE:pretrain> $<TARGET_FILE:trainlaunch>
                     ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
    set_tests_properties(Pretrain.memory_${c} PROPERTIES LABELS recipes TIMEOUT 300)
  endforeach()
endif()
if(TARGET pretrain)
  # The cluster configs at the world size each is written for (config name : world size); passes only when pretrain
  # --validate exits 0 and prints "config OK".
  foreach(entry llama3_8b_1node:8 llama3_8b_4node_hsdp:32 llama3_70b_8node:64)
    string(REPLACE ":" ";" parts ${entry})
    list(GET parts 0 name)
    list(GET parts 1 world)
    add_test(NAME Pretrain.validate_config_${name}
             COMMAND ${CMAKE_COMMAND} "-DEXPECT_LINE=config OK" -P ${CMAKE_CURRENT_LIST_DIR}/expect_success.cmake --
                     $<TARGET_FILE:pretrain> --config ${PROJECT_SOURCE_DIR}/configs/${name}.yaml --validate
                     --world-size ${world})
    set_tests_properties(Pretrain.validate_config_${name} PROPERTIES LABELS recipes TIMEOUT 60)
  endforeach()
endif()
