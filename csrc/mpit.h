// MPI tool information interface (MPI_T): write an MPI library's control variable at run time.
//
// Open MPI's `coll_tuned_allreduce_algorithm` is writable at run time, and a communicator
// created afterwards keeps the value written (Open MPI reads it when it sets up the
// communicator's collectives) -- provided `coll_tuned_use_dynamic_rules` (read-only after
// MPI_Init) was enabled before MPI started. The engine creates one communicator per algorithm
// that way, as candidates for its per-size choice; the benchmark measures each algorithm.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace twinhpc {

// Open MPI's all-reduce algorithms as `coll_tuned_allreduce_algorithm` numbers them:
// (code, name) pairs in increasing code, from 1 (0 lets Open MPI decide).
const std::vector<std::pair<int, std::string>>& openmpi_allreduce_algorithms();
// The code of Open MPI's all-reduce algorithm `name` (one of the above); 0 if unknown.
int openmpi_allreduce_code(const std::string& name);

// Sets the integer control variable `name` (with no object binding) to `value`. Returns ""
// on success, else why not (unknown name, read-only, not an integer, no MPI_T).
std::string set_control_variable(const std::string& name, int value);
// The value of the integer (or boolean) control variable `name`; false if it cannot be read.
bool get_control_variable(const std::string& name, int* value);

}  // namespace twinhpc
