defmodule Krait.ErrorTest do
  use ExUnit.Case, async: true

  alias Krait.Error

  test "gRPC statuses map to categories" do
    for {status, category} <- [
          {1, :cancelled},
          {2, :python},
          {3, :invalid_argument},
          {4, :timeout},
          {5, :not_found},
          {8, :resource_exhausted},
          {9, :failed_precondition},
          {14, :worker},
          {13, :grpc}
        ] do
      error = Error.from_grpc(%Krait.GRPC.Error{status: status, message: "m"}, %{worker_id: "w"})

      assert %Error{
               category: ^category,
               message: "m",
               details: %{status: ^status, worker_id: "w"}
             } = error
    end
  end

  test "a ToolError in the status details fills type, message and traceback" do
    tool_error = %Krait.Proto.ToolError{
      type: "ValueError",
      message: "bad",
      traceback: "tb",
      tool_name: "t",
      worker_id: "w1"
    }

    any = %Krait.Proto.Any{
      type_url: Krait.Proto.tool_error_type_url(),
      value: IO.iodata_to_binary(Krait.Proto.ToolError.encode(tool_error))
    }

    status = %Krait.Proto.RpcStatus{code: 2, message: "ValueError: bad", details: [any]}
    details = IO.iodata_to_binary(Krait.Proto.RpcStatus.encode(status))

    error =
      Error.from_grpc(%Krait.GRPC.Error{status: 2, message: "ValueError: bad", details: details})

    assert %Error{
             category: :python,
             message: "bad",
             details: %{type: "ValueError", traceback: "tb", tool_name: "t", worker_id: "w1"}
           } = error

    assert Exception.message(error) == "[python] ValueError: bad"
  end

  test "pool errors" do
    assert %Error{category: :pool, details: %{reason: :worker_busy}, message: msg} =
             Error.pool(:worker_busy)

    assert msg =~ "busy"
  end
end
