# loomdata end to end (tests/recipes/loomdata_e2e.sh): tokenize -> pretrain trains on the shards; the command line
# (help, usage and bad-line errors, --skip-bad, abrupt stop and resume to identical bytes); and pretrain resuming
# from a checkpoint written before checkpoint JSON moved to nlohmann-json.
if(TARGET loomdata AND TARGET pretrain)
  foreach(c pretrain cli)
    add_test(NAME Loomdata.${c}
             COMMAND ${CMAKE_CURRENT_LIST_DIR}/loomdata_e2e.sh ${c} $<TARGET_FILE:loomdata> $<TARGET_FILE:pretrain>
                     ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
    set_tests_properties(Loomdata.${c} PROPERTIES LABELS recipes TIMEOUT 300)
  endforeach()
endif()
if(TARGET pretrain)
  add_test(NAME Checkpoint.ResumeFromCheckpointOfOldJsonCode
           COMMAND ${CMAKE_CURRENT_LIST_DIR}/loomdata_e2e.sh old_checkpoint - $<TARGET_FILE:pretrain>
                   ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
  set_tests_properties(Checkpoint.ResumeFromCheckpointOfOldJsonCode PROPERTIES LABELS recipes TIMEOUT 180)
endif()
