// MPI tool information interface (MPI_T): write an MPI library's control variable at run time.
//
// Used by the all-reduce benchmark to measure each of Open MPI's all-reduce algorithms in one
// job: `coll_tuned_allreduce_algorithm` is writable, and a communicator created afterwards
// uses the value written (Open MPI reads it when the communicator's collectives are set up).
#pragma once

#include <string>

namespace twinhpc {

// Sets the integer control variable `name` (with no object binding) to `value`. Returns ""
// on success, else why not (unknown name, read-only, not an integer, no MPI_T).
std::string set_control_variable(const std::string& name, int value);

}  // namespace twinhpc
